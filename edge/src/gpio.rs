//! Status LED and capture button on GPIO pins.
//!
//! The LED is on while `edge run` runs, goes dark for a moment on each capture, and
//! blinks at 2 Hz while the camera is lost. The button asks for a manual capture. The
//! logic works on the [`OutputPin`] and [`InputPin`] traits, so it is tested with pins
//! in memory; the real pins come from `rppal` (Cargo feature `gpio`, always on for
//! aarch64 builds).
//!
//! Not supported: off a Raspberry Pi (or on a Jetson, whose GPIO rppal does not drive)
//! opening the pins fails; `edge run` then says "GPIO unavailable" once and goes on.
//! The button is polled once per frame, so a press shorter than a frame interval can be
//! missed; a technician's press lasts far longer.
//!
//! Troubleshooting: "Permission denied" on `/dev/gpiomem` means the service user is not
//! in the `gpio` group.

use serde::{Deserialize, Serialize};

/// A pin that drives something (the LED).
pub trait OutputPin: Send {
    /// Drives the pin: `true` lights the LED (active level already applied).
    fn set(&mut self, on: bool);
}

/// A pin that reads something (the button).
pub trait InputPin: Send {
    /// Whether the input is in its active state (button pressed).
    fn is_active(&mut self) -> bool;
}

/// The `[gpio]` table: BCM pin numbers, all optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioConfig {
    /// BCM number of the status LED pin; unset: no LED.
    pub led_pin: Option<u8>,
    /// The LED lights when the pin is low (wired to 3.3 V through the LED).
    pub led_active_low: bool,
    /// BCM number of the capture button pin (internal pull-up, pressed pulls it low);
    /// unset: no button.
    pub button_pin: Option<u8>,
    /// A press counts once the pin has changed no sooner than this after the last
    /// accepted change, ms.
    pub button_debounce_ms: u64,
}

impl Default for GpioConfig {
    fn default() -> Self {
        Self { led_pin: None, led_active_low: false, button_pin: None, button_debounce_ms: 50 }
    }
}

/// What the LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedMode {
    /// Dark (stopped).
    Off,
    /// Lit (running), with a short dark flash per capture.
    Running,
    /// Blinking at 2 Hz (camera lost).
    CameraLost,
}

/// How long the LED goes dark for one capture, ms.
const FLASH_MS: u64 = 150;
/// Half period of the camera-lost blink, ms.
const BLINK_HALF_MS: u64 = 250;

/// The status LED: a mode, a pending capture flash, and the pin (if any).
pub struct StatusLed {
    pin: Option<Box<dyn OutputPin>>,
    mode: LedMode,
    flash_until_ms: u64,
    written: Option<bool>,
}

impl StatusLed {
    /// An LED on `pin` (None: the logic runs, nothing is driven).
    pub fn new(pin: Option<Box<dyn OutputPin>>) -> Self {
        Self { pin, mode: LedMode::Off, flash_until_ms: 0, written: None }
    }

    /// Sets what the LED shows from now on.
    pub fn set_mode(&mut self, mode: LedMode) {
        self.mode = mode;
    }

    /// Starts the short dark flash that marks a capture.
    pub fn flash(&mut self, now_ms: u64) {
        self.flash_until_ms = now_ms + FLASH_MS;
    }

    /// Whether the LED should be lit at `now_ms`.
    pub fn level(&self, now_ms: u64) -> bool {
        match self.mode {
            LedMode::Off => false,
            LedMode::CameraLost => (now_ms / BLINK_HALF_MS) % 2 == 0,
            LedMode::Running => now_ms >= self.flash_until_ms,
        }
    }

    /// Drives the pin to [`Self::level`] (only when it changes). Call it every frame and
    /// while waiting for a lost camera.
    pub fn update(&mut self, now_ms: u64) {
        let level = self.level(now_ms);
        if self.written != Some(level) {
            if let Some(pin) = &mut self.pin {
                pin.set(level);
            }
            self.written = Some(level);
        }
    }
}

/// The capture button, debounced, reporting each press once.
pub struct Button {
    pin: Box<dyn InputPin>,
    debounce_ms: u64,
    pressed: bool,
    last_change_ms: Option<u64>,
}

impl Button {
    /// A button on `pin`.
    pub fn new(pin: Box<dyn InputPin>, debounce_ms: u64) -> Self {
        Self { pin, debounce_ms, pressed: false, last_change_ms: None }
    }

    /// Reads the pin; true exactly once per press.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let raw = self.pin.is_active();
        if raw == self.pressed {
            return false;
        }
        let settled = self.last_change_ms.is_none_or(|t| now_ms >= t + self.debounce_ms);
        if !settled {
            return false;
        }
        self.pressed = raw;
        self.last_change_ms = Some(now_ms);
        raw
    }
}

/// The LED and button of one device.
pub struct Gpio {
    /// The status LED (drives nothing when no pin is configured or available).
    pub led: StatusLed,
    /// The capture button, if configured and available.
    pub button: Option<Button>,
}

impl Gpio {
    /// Opens the configured pins. Failure is not fatal: it is logged once as
    /// "GPIO unavailable" and the runtime goes on without LED or button.
    pub fn open(config: &GpioConfig) -> Gpio {
        if config.led_pin.is_none() && config.button_pin.is_none() {
            return Gpio { led: StatusLed::new(None), button: None };
        }
        match hardware::open(config) {
            Ok((led, button)) => {
                tracing::info!(led = ?config.led_pin, button = ?config.button_pin, "GPIO ready");
                let button = button.map(|b| Button::new(b, config.button_debounce_ms));
                Gpio { led: StatusLed::new(led), button }
            }
            Err(reason) => {
                tracing::warn!(%reason, "GPIO unavailable; running without LED and button");
                Gpio { led: StatusLed::new(None), button: None }
            }
        }
    }

    /// Whether the button was pressed since the last poll.
    pub fn button_pressed(&mut self, now_ms: u64) -> bool {
        self.button.as_mut().is_some_and(|b| b.poll(now_ms))
    }
}

type Pins = (Option<Box<dyn OutputPin>>, Option<Box<dyn InputPin>>);

#[cfg(any(feature = "gpio", target_arch = "aarch64"))]
mod hardware {
    use super::{GpioConfig, InputPin, OutputPin, Pins};

    struct Led {
        pin: rppal::gpio::OutputPin,
        active_low: bool,
    }

    impl OutputPin for Led {
        fn set(&mut self, on: bool) {
            if on != self.active_low {
                self.pin.set_high();
            } else {
                self.pin.set_low();
            }
        }
    }

    struct PullUpButton(rppal::gpio::InputPin);

    impl InputPin for PullUpButton {
        fn is_active(&mut self) -> bool {
            self.0.is_low()
        }
    }

    pub(super) fn open(config: &GpioConfig) -> Result<Pins, String> {
        let gpio = rppal::gpio::Gpio::new().map_err(|e| format!("cannot open GPIO: {e}"))?;
        let led = match config.led_pin {
            Some(n) => {
                let pin = gpio.get(n).map_err(|e| format!("LED pin {n}: {e}"))?.into_output();
                Some(Box::new(Led { pin, active_low: config.led_active_low }) as Box<dyn OutputPin>)
            }
            None => None,
        };
        let button = match config.button_pin {
            Some(n) => {
                let pin = gpio.get(n).map_err(|e| format!("button pin {n}: {e}"))?;
                Some(Box::new(PullUpButton(pin.into_input_pullup())) as Box<dyn InputPin>)
            }
            None => None,
        };
        Ok((led, button))
    }
}

#[cfg(not(any(feature = "gpio", target_arch = "aarch64")))]
mod hardware {
    use super::{GpioConfig, Pins};

    pub(super) fn open(_config: &GpioConfig) -> Result<Pins, String> {
        Err("this binary was built without the `gpio` feature (cargo build --features gpio)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct FakeOut(Arc<Mutex<Vec<bool>>>);

    impl OutputPin for FakeOut {
        fn set(&mut self, on: bool) {
            self.0.lock().unwrap().push(on);
        }
    }

    struct FakeIn(Arc<Mutex<bool>>);

    impl InputPin for FakeIn {
        fn is_active(&mut self) -> bool {
            *self.0.lock().unwrap()
        }
    }

    #[test]
    fn led_is_on_while_running_and_flashes_dark_on_capture() {
        let out = FakeOut::default();
        let mut led = StatusLed::new(Some(Box::new(out.clone())));
        led.set_mode(LedMode::Running);
        led.update(1000);
        led.flash(1000);
        led.update(1050);
        led.update(1100);
        led.update(1200);
        assert_eq!(*out.0.lock().unwrap(), vec![true, false, true], "writes only on change");
    }

    #[test]
    fn led_blinks_at_two_hertz_while_the_camera_is_lost() {
        let mut led = StatusLed::new(None);
        led.set_mode(LedMode::CameraLost);
        let levels: Vec<bool> = (0..4).map(|i| led.level(i * 250)).collect();
        assert_eq!(levels, vec![true, false, true, false]);
        led.set_mode(LedMode::Off);
        assert!(!led.level(0));
    }

    #[test]
    fn button_reports_each_press_once_and_ignores_bounce() {
        let state = Arc::new(Mutex::new(false));
        let mut b = Button::new(Box::new(FakeIn(state.clone())), 50);
        assert!(!b.poll(0));
        *state.lock().unwrap() = true;
        assert!(b.poll(100), "press");
        assert!(!b.poll(110), "held");
        *state.lock().unwrap() = false;
        assert!(!b.poll(120), "bounce within 50 ms is ignored");
        assert!(!b.poll(200), "release");
        *state.lock().unwrap() = true;
        assert!(b.poll(300), "second press");
    }

    #[test]
    fn without_pins_gpio_opens_quietly() {
        let mut g = Gpio::open(&GpioConfig::default());
        assert!(!g.button_pressed(0));
        g.led.update(0);
    }

    #[test]
    fn configured_pins_off_a_pi_mean_no_gpio_not_a_crash() {
        // No GPIO chip on a build machine: rppal (or the feature-less build) refuses, and
        // the runtime carries on without LED and button.
        if std::path::Path::new("/dev/gpiomem").exists() {
            return; // a real Pi: the pins would open, which is not what this checks
        }
        let config = GpioConfig { led_pin: Some(17), button_pin: Some(27), ..Default::default() };
        let mut g = Gpio::open(&config);
        assert!(g.button.is_none());
        assert!(!g.button_pressed(0));
    }
}
