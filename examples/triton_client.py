"""Talk to a Switchyard worker with NVIDIA's standard Triton gRPC client.

    pip install "tritonclient[grpc]"
    cargo run --release -- worker &          # KServe v2 gRPC on 127.0.0.1:9001
    python examples/triton_client.py 127.0.0.1:9001

Lists the models, reads the metadata, and runs a unary and a streaming inference.
"""

import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient

url = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9001"
client = grpcclient.InferenceServerClient(url=url)

print("live:", client.is_server_live(), "ready:", client.is_server_ready())
print("server:", client.get_server_metadata(as_json=True))
print("models:", client.get_model_repository_index(as_json=True))
print("sim-llm ready:", client.is_model_ready("sim-llm"))
print("metadata:", client.get_model_metadata("sim-llm", as_json=True))

prompt = grpcclient.InferInput("text_input", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"Explain continuous batching in one paragraph."], dtype=np.object_))
result = client.infer(
    "sim-llm",
    [prompt],
    outputs=[grpcclient.InferRequestedOutput("text_output")],
    parameters={"max_tokens": 16},
)
print("unary text_output:", result.as_numpy("text_output")[0].decode())
print("unary parameters:", result.get_response(as_json=True).get("parameters"))

responses = queue.Queue()
client.start_stream(callback=lambda result, error: responses.put((result, error)))
client.async_stream_infer("sim-llm", [prompt], request_id="s1", parameters={"max_tokens": 8})
tokens = []
while True:
    result, error = responses.get(timeout=30)
    if error is not None:
        raise SystemExit(f"stream error: {error}")
    tokens.append(result.as_numpy("text_output")[0].decode())
    if result.get_response().parameters["triton_final_response"].bool_param:
        break
client.stop_stream()
print("streamed tokens:", tokens)
