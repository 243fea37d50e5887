//! A small ONNX graph writer: initializers, nodes and the model envelope, encoded with the
//! protobuf types tract-onnx generates (`tract_onnx::pb`), so the file we write is parsed
//! by the same definitions the edge reads it with.

use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::quantize::quantize_per_channel;
use super::Param;

/// The ONNX operator set the graphs use: the first with per-axis DequantizeLinear and
/// Clip taking its bounds as inputs.
pub const OPSET: i64 = 13;

/// IR version that goes with opset 13.
const IR_VERSION: i64 = 7;

/// How weight tensors are stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightForm {
    /// Plain float initializers.
    Fp32,
    /// Int8 initializers with one scale per output channel, turned back into floats by a
    /// DequantizeLinear node (axis 0, zero point 0); activations stay float.
    Int8PerChannel,
}

/// Collects the nodes and initializers of one graph in topological order.
#[derive(Debug)]
pub struct GraphBuilder {
    form: WeightForm,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl GraphBuilder {
    /// An empty graph whose weights will be stored as `form`.
    pub fn new(form: WeightForm) -> Self {
        Self { form, nodes: Vec::new(), initializers: Vec::new() }
    }

    /// Adds a float constant (bias, clip bound) that is never quantized; returns its name.
    pub fn constant(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        self.initializers.push(f32_tensor(name, shape, data));
        name.to_string()
    }

    /// Adds a weight tensor in the builder's form; returns the name of the float value
    /// the consuming node reads.
    pub fn weight(&mut self, name: &str, param: &Param) -> String {
        match self.form {
            WeightForm::Fp32 => self.constant(name, &param.shape, &param.data),
            WeightForm::Int8PerChannel => {
                let q = quantize_per_channel(param);
                let (q_name, s_name, z_name) =
                    (format!("{name}.q"), format!("{name}.scale"), format!("{name}.zero_point"));
                let channels = q.scales.len();
                self.initializers.push(i8_tensor(&q_name, &param.shape, &q.values));
                self.initializers.push(f32_tensor(&s_name, &[channels], &q.scales));
                self.initializers.push(i8_tensor(&z_name, &[channels], &vec![0; channels]));
                self.node(
                    "DequantizeLinear",
                    name,
                    &[&q_name, &s_name, &z_name],
                    name,
                    vec![attr_int("axis", 0)],
                )
            }
        }
    }

    /// Appends a node with one output; returns the output's name.
    pub fn node(
        &mut self,
        op: &str,
        node_name: &str,
        inputs: &[&str],
        output: &str,
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: node_name.to_string(),
            op_type: op.to_string(),
            attribute: attributes,
            ..Default::default()
        });
        output.to_string()
    }

    /// Wraps the graph into a model with one float input and the given float outputs.
    pub fn into_model(
        self,
        input: (&str, &[usize]),
        outputs: &[(&str, &[usize])],
        metadata: &[(&str, String)],
    ) -> ModelProto {
        let graph = GraphProto {
            node: self.nodes,
            name: "fdet".into(),
            initializer: self.initializers,
            input: vec![value_info(input.0, input.1)],
            output: outputs.iter().map(|(n, s)| value_info(n, s)).collect(),
            ..Default::default()
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "fdet-host".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: k.to_string(), value: v.clone() })
                .collect(),
            ..Default::default()
        }
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

fn f32_tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims(shape),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i8_tensor(name: &str, shape: &[usize], data: &[i8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims(shape),
        data_type: DataType::Int8 as i32,
        raw_data: data.iter().map(|&v| v as u8).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: DataType::Float as i32,
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        }),
        ..Default::default()
    }
}
