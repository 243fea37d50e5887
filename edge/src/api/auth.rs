//! Bearer-token check and the limit on failed attempts.
//!
//! The token is compared in constant time: both sides are hashed with SHA-256 first, so
//! neither the content nor the length of the device's token leaks through timing.
//! After [`AuthLimiter`]'s limit of failures from one address within a minute, that
//! address is answered 429 without looking at the token, which caps guessing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, ApiState};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; older entries are dropped first when full.
const MAX_TRACKED: usize = 4096;

/// The device's token, kept only as its hash.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token from its text (surrounding whitespace ignored).
    pub fn new(text: &str) -> Self {
        Self(Sha256::digest(text.trim().as_bytes()).into())
    }

    /// Whether `presented` is this token, in time independent of both.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        self.0.ct_eq(&presented).into()
    }
}

/// Failed authentications per client address in the current window.
#[derive(Debug)]
pub struct AuthLimiter {
    max_failures: u32,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthLimiter {
    /// A limiter allowing `max_failures` failures per address per minute.
    pub fn new(max_failures: u32) -> Self {
        Self { max_failures, failures: Mutex::new(HashMap::new()) }
    }

    /// Seconds to wait, if `ip` is over its limit.
    fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = map.get(&ip)?;
        let elapsed = now.duration_since(*start);
        (elapsed < WINDOW && *count >= self.max_failures)
            .then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    /// Counts one failure from `ip`; returns the failures in its window.
    fn record_failure(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        if map.len() >= MAX_TRACKED {
            // Still full of live windows: forget the oldest rather than grow without bound.
            if let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(ip, _)| *ip) {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1
    }
}

/// Middleware: lets the request through only with the device's bearer token.
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // Requests built in tests carry no peer address; they count as one client.
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let now = Instant::now();
    if let Some(retry_after_s) = state.limiter.blocked_for(ip, now) {
        return Err(ApiError::TooManyFailures { retry_after_s });
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(token) if state.token.matches(token) => Ok(next.run(request).await),
        _ => {
            let failures = state.limiter.record_failure(ip, now);
            state.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                %ip,
                path = %request.uri().path(),
                failures,
                "request without a valid token"
            );
            Err(ApiError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself() {
        let t = Token::new("s3cret-token\n");
        assert!(t.matches(b"s3cret-token"));
        assert!(!t.matches(b"s3cret-tokeN"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn limiter_blocks_after_the_limit_and_forgets_after_the_window() {
        let l = AuthLimiter::new(3);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.blocked_for(ip, t0).is_none());
            l.record_failure(ip, t0);
        }
        assert!(l.blocked_for(ip, t0).is_some());
        assert!(l.blocked_for(IpAddr::from([10, 0, 0, 2]), t0).is_none());
        assert!(l.blocked_for(ip, t0 + WINDOW).is_none());
    }
}
