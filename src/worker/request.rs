//! Reading a KServe v2 `ModelInferRequest` into a generation request, with gRPC statuses that
//! name what is wrong.

use switchyard_core::{BYTES_PER_TOKEN, PrefixBlocks};
use switchyard_sim::GenerationRequest;
use tonic::Status;

use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::{InferParameter, InferTensorContents, ModelInferRequest};

/// Name of the prompt input tensor.
pub const TEXT_INPUT: &str = "text_input";
/// Name of the generated-text output tensor.
pub const TEXT_OUTPUT: &str = "text_output";
/// Request parameter: how many tokens to generate.
pub const MAX_TOKENS: &str = "max_tokens";
/// Request parameter (trace replay): the prompt's length in tokens, overriding the estimate from
/// the text.
pub const PROMPT_TOKENS: &str = "prompt_tokens";
/// Request parameter (trace replay): the prompt's KV-cache block ids, comma-separated integers.
pub const PREFIX_HASHES: &str = "prefix_hashes";
/// Output tokens generated when a request does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 64;

/// A `ModelInferRequest` for `model` with `text` as its `text_input` prompt and at most
/// `max_tokens` tokens to generate: what a client of the worker sends.
pub fn text_request(model: &str, text: &str, max_tokens: u32) -> ModelInferRequest {
    let mut parameters = std::collections::HashMap::new();
    parameters.insert(MAX_TOKENS.to_string(), int_parameter(i64::from(max_tokens)));
    ModelInferRequest {
        model_name: model.to_string(),
        parameters,
        inputs: vec![InferInputTensor {
            name: TEXT_INPUT.into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            contents: Some(InferTensorContents {
                bytes_contents: vec![text.as_bytes().to_vec()],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An integer inference parameter.
pub fn int_parameter(value: i64) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(value)) }
}

/// A validated inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedInfer {
    /// The prompt's length in tokens.
    pub prompt_tokens: u32,
    /// How many tokens to generate.
    pub max_tokens: u32,
    /// The prompt's KV-cache block ids.
    pub prefix: PrefixBlocks,
    /// Whether the request sent its input as raw bytes (then the output goes back raw too).
    pub raw: bool,
}

impl ParsedInfer {
    /// The engine request for this inference, dropped while still queued at `deadline`.
    pub fn generation_request(&self, deadline: Option<tokio::time::Instant>) -> GenerationRequest {
        GenerationRequest {
            prompt_tokens: self.prompt_tokens,
            max_tokens: self.max_tokens,
            prefix: self.prefix.clone(),
            deadline,
            output_tokens: None,
        }
    }
}

/// Checks the model name and version, reads `text_input` and the parameters.
pub fn parse_infer(req: &ModelInferRequest, model: &str, block_tokens: u32) -> Result<ParsedInfer, Status> {
    check_model(&req.model_name, &req.model_version, model)?;
    for out in &req.outputs {
        if out.name != TEXT_OUTPUT {
            return Err(Status::invalid_argument(format!(
                "unknown output tensor '{}': model '{model}' has only '{TEXT_OUTPUT}'",
                out.name
            )));
        }
    }
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(Status::invalid_argument(format!(
            "raw_input_contents has {} entries but there are {} input tensors; send one per input",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let Some(index) = req.inputs.iter().position(|t| t.name == TEXT_INPUT) else {
        let names: Vec<&str> = req.inputs.iter().map(|t| t.name.as_str()).collect();
        return Err(Status::invalid_argument(format!(
            "missing input tensor '{TEXT_INPUT}' (BYTES, shape [1]); got {names:?}"
        )));
    };
    let tensor = &req.inputs[index];
    if tensor.datatype != "BYTES" {
        return Err(Status::invalid_argument(format!(
            "input tensor '{TEXT_INPUT}' must have datatype BYTES, got '{}'",
            tensor.datatype
        )));
    }
    // The client's dimensions: a negative one, or a product past i64, is no shape of one prompt
    // (and must not overflow here: -1 x -1 is not 1).
    let elements = tensor.shape.iter().try_fold(1i64, |n, &d| if d < 0 { None } else { n.checked_mul(d) });
    if tensor.shape.is_empty() || elements != Some(1) {
        return Err(Status::invalid_argument(format!(
            "input tensor '{TEXT_INPUT}' must hold one prompt (shape [1]), got shape {:?}",
            tensor.shape
        )));
    }
    let text: &[u8] = if raw {
        raw_bytes_element(&req.raw_input_contents[index])?
    } else {
        match tensor.contents.as_ref().map(|c| c.bytes_contents.as_slice()) {
            Some([one]) => one,
            Some(other) if !other.is_empty() => {
                return Err(Status::invalid_argument(format!(
                    "input tensor '{TEXT_INPUT}' has {} bytes_contents elements; its shape [1] says one",
                    other.len()
                )));
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "input tensor '{TEXT_INPUT}' has no data: set contents.bytes_contents or raw_input_contents"
                )));
            }
        }
    };
    let text = std::str::from_utf8(text)
        .map_err(|e| Status::invalid_argument(format!("input tensor '{TEXT_INPUT}' is not UTF-8: {e}")))?;

    let max_tokens = match integer_param(req, MAX_TOKENS)? {
        None => DEFAULT_MAX_TOKENS,
        Some(n) if n >= 1 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => {
            return Err(Status::invalid_argument(format!(
                "parameter '{MAX_TOKENS}' must be at least 1, got {n}"
            )));
        }
    };
    let prompt_tokens = match integer_param(req, PROMPT_TOKENS)? {
        Some(n) if n >= 1 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => {
            return Err(Status::invalid_argument(format!(
                "parameter '{PROMPT_TOKENS}' must be at least 1, got {n}"
            )));
        }
        None if text.is_empty() => {
            return Err(Status::invalid_argument(format!(
                "input tensor '{TEXT_INPUT}' is empty and no '{PROMPT_TOKENS}' parameter was given"
            )));
        }
        None => u32::try_from(text.len().div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX),
    };
    let prefix = match req.parameters.get(PREFIX_HASHES) {
        None => PrefixBlocks::from_text(text, block_tokens),
        Some(p) => parse_prefix_hashes(p)?,
    };
    Ok(ParsedInfer { prompt_tokens, max_tokens, prefix, raw })
}

/// NOT_FOUND unless `name` is the served model and `version` is empty or "1".
pub fn check_model(name: &str, version: &str, model: &str) -> Result<(), Status> {
    if name != model {
        return Err(Status::not_found(format!(
            "model '{name}' is not served here; this worker serves '{model}'"
        )));
    }
    if !(version.is_empty() || version == "1") {
        return Err(Status::not_found(format!(
            "model '{name}' has no version '{version}'; it has version '1'"
        )));
    }
    Ok(())
}

/// The call's deadline from its `grpc-timeout` header (gRPC over HTTP/2: one to eight ASCII
/// digits and a unit, `H`, `M`, `S`, `m`, `u` or `n`), or `None` when it has none or the value is
/// malformed (a call without a readable deadline waits as long as it takes, as tonic's own server
/// treats it).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    switchyard_core::parse_grpc_timeout(metadata.get("grpc-timeout")?.as_bytes())
}

/// One element of a raw BYTES tensor: a 4-byte little-endian length, then the bytes.
fn raw_bytes_element(raw: &[u8]) -> Result<&[u8], Status> {
    let bad = |what: &str| Status::invalid_argument(format!("raw contents of '{TEXT_INPUT}' {what}"));
    let Some((len, rest)) = raw.split_first_chunk::<4>() else {
        return Err(bad("are shorter than the 4-byte length prefix of a BYTES element"));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() != len {
        return Err(bad(&format!(
            "declare an element of {len} bytes but hold {} (one element expected)",
            rest.len()
        )));
    }
    Ok(rest)
}

fn integer_param(req: &ModelInferRequest, name: &str) -> Result<Option<i64>, Status> {
    let Some(p) = req.parameters.get(name) else { return Ok(None) };
    let wrong =
        |got: String| Status::invalid_argument(format!("parameter '{name}' must be an integer, got {got}"));
    match &p.parameter_choice {
        Some(ParameterChoice::Int64Param(n)) => Ok(Some(*n)),
        Some(ParameterChoice::Uint64Param(n)) => Ok(Some(i64::try_from(*n).unwrap_or(i64::MAX))),
        Some(ParameterChoice::StringParam(s)) => {
            s.trim().parse().map(Some).map_err(|_| wrong(format!("string {s:?}")))
        }
        Some(ParameterChoice::DoubleParam(d)) if d.fract() == 0.0 && d.is_finite() => Ok(Some(*d as i64)),
        Some(ParameterChoice::DoubleParam(d)) => Err(wrong(format!("double {d}"))),
        Some(ParameterChoice::BoolParam(b)) => Err(wrong(format!("bool {b}"))),
        None => Err(wrong("an empty parameter".into())),
    }
}

fn parse_prefix_hashes(p: &InferParameter) -> Result<PrefixBlocks, Status> {
    let Some(ParameterChoice::StringParam(s)) = &p.parameter_choice else {
        return Err(Status::invalid_argument(format!(
            "parameter '{PREFIX_HASHES}' must be a string of comma-separated integers"
        )));
    };
    let ids = s
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!(
                    "parameter '{PREFIX_HASHES}' has {part:?}, which is not an integer"
                ))
            })
        })
        .collect::<Result<Vec<u64>, Status>>()?;
    Ok(PrefixBlocks::new(ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn grpc_timeout_reads_every_unit_and_ignores_malformed_values() {
        use std::time::Duration;
        let read = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("10S"), Some(Duration::from_secs(10)));
        assert_eq!(read("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(read("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(read("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "100", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    fn request(text: &str) -> ModelInferRequest {
        let mut req = text_request("m", text, DEFAULT_MAX_TOKENS);
        req.parameters.clear();
        req
    }

    fn param(choice: ParameterChoice) -> InferParameter {
        InferParameter { parameter_choice: Some(choice) }
    }

    #[test]
    fn estimates_prompt_tokens_from_text() {
        let parsed = parse_infer(&request("12345678"), "m", 512).unwrap();
        assert_eq!((parsed.prompt_tokens, parsed.max_tokens, parsed.raw), (2, DEFAULT_MAX_TOKENS, false));
        assert!(parsed.prefix.is_empty());
    }

    #[test]
    fn trace_parameters_override_the_text() {
        let mut req = request("hi");
        req.parameters.insert(PROMPT_TOKENS.into(), param(ParameterChoice::Int64Param(2048)));
        req.parameters.insert(MAX_TOKENS.into(), param(ParameterChoice::StringParam("17".into())));
        req.parameters.insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("4, 5,6".into())));
        let parsed = parse_infer(&req, "m", 512).unwrap();
        assert_eq!((parsed.prompt_tokens, parsed.max_tokens), (2048, 17));
        assert_eq!(parsed.prefix.ids(), &[4, 5, 6]);
    }

    #[test]
    fn reads_raw_bytes_contents() {
        let mut req = request("");
        req.inputs[0].contents = None;
        let mut raw = 5u32.to_le_bytes().to_vec();
        raw.extend_from_slice(b"hello");
        req.raw_input_contents = vec![raw];
        let parsed = parse_infer(&req, "m", 512).unwrap();
        assert!(parsed.raw);
        assert_eq!(parsed.prompt_tokens, 2);
        req.raw_input_contents = vec![vec![9, 0, 0, 0, b'x']];
        let err = parse_infer(&req, "m", 512).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("9 bytes"), "{}", err.message());
    }

    #[test]
    fn a_shape_of_negative_or_overflowing_dimensions_is_refused() {
        for shape in [vec![1 << 32, 1 << 32], vec![-1, -1], vec![i64::MAX, 2, 0], vec![0]] {
            let mut req = request("some prompt");
            req.inputs[0].shape = shape.clone();
            let err = parse_infer(&req, "m", 512).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{shape:?}");
            assert!(err.message().contains("shape ["), "{shape:?}: {}", err.message());
        }
        let mut req = request("some prompt");
        req.inputs[0].shape = vec![1, 1, 1];
        assert!(parse_infer(&req, "m", 512).is_ok(), "[1, 1, 1] holds one prompt");
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        type Mutation = Box<dyn Fn(&mut ModelInferRequest)>;
        let cases: Vec<(Mutation, Code, &str)> = vec![
            (Box::new(|r| r.model_name = "other".into()), Code::NotFound, "'other'"),
            (Box::new(|r| r.model_version = "7".into()), Code::NotFound, "version '7'"),
            (
                Box::new(|r| r.inputs[0].name = "prompt".into()),
                Code::InvalidArgument,
                "missing input tensor 'text_input'",
            ),
            (Box::new(|r| r.inputs[0].datatype = "FP32".into()), Code::InvalidArgument, "'FP32'"),
            (Box::new(|r| r.inputs[0].shape = vec![2]), Code::InvalidArgument, "shape [2]"),
            (Box::new(|r| r.inputs[0].contents = None), Code::InvalidArgument, "has no data"),
            (
                Box::new(|r| {
                    r.parameters.insert(MAX_TOKENS.into(), param(ParameterChoice::BoolParam(true)));
                }),
                Code::InvalidArgument,
                "'max_tokens' must be an integer, got bool",
            ),
            (
                Box::new(|r| {
                    r.parameters.insert(MAX_TOKENS.into(), param(ParameterChoice::Int64Param(0)));
                }),
                Code::InvalidArgument,
                "at least 1",
            ),
            (
                Box::new(|r| {
                    r.parameters
                        .insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("1,x".into())));
                }),
                Code::InvalidArgument,
                "\"x\"",
            ),
            (
                Box::new(|r| {
                    r.outputs.push(Default::default());
                    r.outputs[0].name = "logits".into();
                }),
                Code::InvalidArgument,
                "'logits'",
            ),
            (
                Box::new(|r| r.inputs[0].contents.as_mut().unwrap().bytes_contents = vec![vec![0xff]]),
                Code::InvalidArgument,
                "not UTF-8",
            ),
        ];
        for (mutate, code, needle) in cases {
            let mut req = request("some prompt");
            mutate(&mut req);
            let err = parse_infer(&req, "m", 512).unwrap_err();
            assert_eq!(err.code(), code, "{}", err.message());
            assert!(err.message().contains(needle), "{:?} lacks {needle:?}", err.message());
        }
    }
}
