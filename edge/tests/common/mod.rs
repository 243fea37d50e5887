//! Small ONNX graphs made in code, so the tests need no model file: they are written with
//! the protobuf types tract-onnx itself parses (`tract_onnx::pb`).

#![allow(dead_code)]

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A float initializer.
pub fn f32_init(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int8 initializer.
pub fn i8_init(name: &str, dims: &[i64], data: &[i8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int8 as i32,
        raw_data: data.iter().map(|&v| v as u8).collect(),
        ..Default::default()
    }
}

/// A node with integer attributes.
pub fn node(op: &str, inputs: &[&str], output: &str, ints: &[(&str, i64)]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: ints
            .iter()
            .map(|(n, v)| AttributeProto {
                name: n.to_string(),
                r#type: AttributeType::Int as i32,
                i: *v,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A float value of fixed shape.
pub fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    let t = type_proto::Tensor {
        elem_type: DataType::Float as i32,
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(t)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An opset-13 model around a graph.
pub fn model(
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> ModelProto {
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
        producer_name: "edge-tests".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "test".into(),
            initializer: inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A stand-in detector with the real model's interface (input `[1,3,224,224]`, outputs
/// `score [1,1]` and `bbox [1,4]`): the score is the sigmoid of the mean brightness times
/// 4, so bright frames score high and dark ones low. With `box_sigmoid` false the box
/// comes out as raw values far above 1, which a detector must reject.
pub fn stand_in_detector(box_sigmoid: bool) -> Vec<u8> {
    let inits = vec![
        f32_init("ws", &[1, 3], &[4.0 / 3.0, 4.0 / 3.0, 4.0 / 3.0]),
        f32_init("bs", &[1], &[0.0]),
        f32_init("wb", &[4, 3], &[0.0; 12]),
        f32_init("bb", &[4], &[-1.0, -1.0, 1.0, 1.0]),
        f32_init("big", &[4], &[5.0; 4]),
    ];
    let mut nodes = vec![
        node("GlobalAveragePool", &["input"], "pool", &[]),
        node("Flatten", &["pool"], "flat", &[("axis", 1)]),
        node("Gemm", &["flat", "ws", "bs"], "s", &[("transB", 1)]),
        node("Sigmoid", &["s"], "score", &[]),
        node("Gemm", &["flat", "wb", "bb"], "b", &[("transB", 1)]),
    ];
    if box_sigmoid {
        nodes.push(node("Sigmoid", &["b"], "bbox", &[]));
    } else {
        nodes.push(node("Add", &["b", "big"], "bbox", &[]));
    }
    let m = model(
        nodes,
        inits,
        vec![value("input", &[1, 3, 224, 224])],
        vec![value("score", &[1, 1]), value("bbox", &[1, 4])],
    );
    m.encode_to_vec()
}
