#!/usr/bin/env python3
"""ONNX Runtime as the embeddings peer, without torch.

The usual way to get a BERT model into ONNX Runtime is `torch.onnx.export` (optimum,
sentence-transformers' ONNX backend). Torch is not installable here, so this script writes
the same graph by hand with the `onnx` helper API from the model's own `model.safetensors`
and `config.json`: embeddings (word + position + token type, LayerNorm), N encoder layers
(self-attention with the padding mask, erf GELU feed-forward, post-LayerNorm residuals),
then mean pooling over the attention mask and L2 normalisation, which is what
sentence-transformers computes for all-MiniLM-L6-v2. ONNX Runtime's graph optimiser, or the
BERT fusions of `onnxruntime.transformers.optimizer` (the same ones optimum applies at its O2
level), then turn it into fused Attention / SkipLayerNorm / BiasGelu kernels.

Used by compare.py; on its own:

    python3 benches/minilm_onnx.py --model ~/.cache/hearth/models/all-minilm-l6-v2 --check FIXTURE.json

checks the graph against the sentence-transformers fixture (cosine per text) and prints the
smallest cosine; `--texts T.json` times it, `--int8` also times ORT's dynamically quantised
int8 graph (and, with `--check`, its cosine). Needs `pip install onnx onnxruntime tokenizers numpy`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header length, JSON header, raw data)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, expected one of {sorted(SAFETENSORS_DTYPES)}")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(raw[base + start : base + end], dtype=dtype).reshape(info["shape"]).astype(
            np.float32 if dtype == np.float16 else dtype
        )
    # Some exports prefix every name with "bert."; the graph below uses the bare names.
    if all(k.startswith("bert.") for k in tensors):
        tensors = {k[len("bert.") :]: v for k, v in tensors.items()}
    return tensors


def build_graph(model_dir: Path):
    """An onnx.ModelProto for the BERT encoder + mean pooling + L2 normalisation."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ValueError(f"{model_dir}/config.json: model_type is {config.get('model_type')!r}, expected 'bert'")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{model_dir}/config.json: hidden_act is {config['hidden_act']!r}, expected 'gelu'")
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    layers = config["num_hidden_layers"]
    eps = float(config.get("layer_norm_eps", 1e-12))
    head_dim = hidden // heads
    weights = load_safetensors(model_dir / "model.safetensors")

    nodes: list = []
    inits: list = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(value: np.ndarray, prefix: str = "c") -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), n))
        return n

    def weight(key: str, transpose: bool = False) -> str:
        w = weights[key]
        return const(w.T if transpose else w, key.replace(".", "_"))

    def op(kind: str, inputs: list[str], **attrs) -> str:
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(x: str, prefix: str) -> str:
        return op("Add", [op("MatMul", [x, weight(prefix + ".weight", transpose=True)]), weight(prefix + ".bias")])

    def layer_norm(x: str, prefix: str) -> str:
        return op(
            "LayerNormalization", [x, weight(prefix + ".weight"), weight(prefix + ".bias")], axis=-1, epsilon=eps
        )

    # Embeddings.
    seq_len = op("Shape", ["input_ids"], start=1, end=2)  # [S], one-dimensional
    zero = const(np.array([0], dtype=np.int64))
    position_table = op("Slice", [weight("embeddings.position_embeddings.weight"), zero, seq_len, zero])
    x = op("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"])
    x = op("Add", [x, op("Gather", [weight("embeddings.token_type_embeddings.weight"), "token_type_ids"])])
    x = op("Add", [x, position_table])
    x = layer_norm(x, "embeddings.LayerNorm")

    # Additive padding mask [B, 1, 1, S]: 0 where attended, a large negative number elsewhere.
    # Built as torch exports it (unsqueeze, unsqueeze, cast, 1 - m, × -10000) so that ORT's
    # attention fusion recognises it.
    mask_4d = op("Unsqueeze", [op("Unsqueeze", ["attention_mask", const(np.array([1], dtype=np.int64))]), const(np.array([2], dtype=np.int64))])
    mask_4d = op("Cast", [mask_4d], to=TensorProto.FLOAT)
    bias = op("Mul", [op("Sub", [const(np.array(1.0, np.float32)), mask_4d]), const(np.array(-10000.0, np.float32))])
    mask_f = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)

    split_heads = const(np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_heads = const(np.array([0, 0, hidden], dtype=np.int64))
    sqrt_head_dim = const(np.array(math.sqrt(head_dim), np.float32))
    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = op("Transpose", [op("Reshape", [linear(x, p + ".attention.self.query"), split_heads])], perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [linear(x, p + ".attention.self.key"), split_heads])], perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [linear(x, p + ".attention.self.value"), split_heads])], perm=[0, 2, 1, 3])
        # Q·Kᵀ / sqrt(d) + mask: the pattern ORT's attention fusion looks for.
        scores = op("Add", [op("Div", [op("MatMul", [q, k]), sqrt_head_dim]), bias])
        context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        context = op("Reshape", [op("Transpose", [context], perm=[0, 2, 1, 3]), merge_heads])
        x = layer_norm(op("Add", [linear(context, p + ".attention.output.dense"), x]), p + ".attention.output.LayerNorm")
        h = linear(x, p + ".intermediate.dense")
        # erf GELU: x * 0.5 * (1 + erf(x / sqrt 2)), the form BERT's fusions recognise.
        erf = op("Erf", [op("Div", [h, const(np.array(math.sqrt(2.0), np.float32))])])
        h = op("Mul", [op("Mul", [h, op("Add", [erf, const(np.array(1.0, np.float32))])]), const(np.array(0.5, np.float32))])
        x = layer_norm(op("Add", [linear(h, p + ".output.dense"), x]), p + ".output.LayerNorm")

    # Mean pooling over attended positions, then L2 normalisation.
    m = op("Unsqueeze", [mask_f, const(np.array([2], dtype=np.int64))])
    summed = op("ReduceSum", [op("Mul", [x, m]), const(np.array([1], dtype=np.int64))], keepdims=0)
    count = op("Clip", [op("ReduceSum", [m, const(np.array([1], dtype=np.int64))], keepdims=0), const(np.array(1e-9, np.float32))])
    pooled = op("Div", [summed, count])
    norm = op("Clip", [op("ReduceL2", [pooled], axes=[1], keepdims=1), const(np.array(1e-12, np.float32))])
    nodes.append(helper.make_node("Div", [pooled, norm], ["embeddings"]))

    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    outputs = [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", hidden])]
    graph = helper.make_graph(nodes, "sentence_embedding", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hearth minilm_onnx.py")
    onnx.checker.check_model(model)
    return model, config


class OrtEmbedder:
    """Tokenizer + ONNX Runtime session, the way an optimum/ORT deployment would run it."""

    def __init__(self, model_dir: Path, threads: int, fused: bool = True, int8: bool = False):
        import logging

        import onnx
        import onnxruntime as ort
        from tokenizers import Tokenizer

        # The BERT optimiser warns that the graph's producer is not "pytorch": true, and harmless.
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        model, config = build_graph(model_dir)
        self.fusion = "none"
        if int8:
            fused = False  # the quantiser cannot read the fused contrib ops
        if fused:
            try:
                from onnxruntime.transformers.optimizer import optimize_model

                optimized = optimize_model(
                    model,
                    model_type="bert",
                    num_heads=config["num_attention_heads"],
                    hidden_size=config["hidden_size"],
                    opt_level=0,  # its onnxruntime pre-pass imports torch; the session optimises anyway
                )
                self.fusion = json.dumps(optimized.get_fused_operator_statistics(), sort_keys=True)
                model = optimized.model
            except Exception as err:  # an optimiser that cannot fuse still leaves ORT's own graph passes
                self.fusion = f"transformers optimizer failed: {err}"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            if int8:
                # Dynamic quantisation: int8 weights, activations quantised per call (ORT's
                # quantize_dynamic defaults), what "ORT int8" deployments of MiniLM use.
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantized = Path(tmp) / "model.int8.onnx"
                quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
                path = quantized
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3  # shape-merge warnings about the hand-built graph are noise
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        max_len = 256
        st = model_dir / "sentence_bert_config.json"
        if st.exists():
            max_len = json.loads(st.read_text()).get("max_seq_length", max_len)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_len)
        self.tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))

    def embed(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.session.run(["embeddings"], feeds)[0]


def benchmark(model_dir: Path, texts: list[str], threads: int, repeats: int) -> dict:
    """Sentences per second for the fused and the plain graph; the faster is the peer's figure."""
    report: dict = {"embeddings_peer": "ONNX Runtime"}
    best = None
    for fused in (True, False):
        embedder = OrtEmbedder(model_dir, threads, fused=fused)
        embedder.embed(texts)  # warm-up
        samples = []
        for _ in range(max(repeats, 3)):
            t0 = time.perf_counter()
            embedder.embed(texts)
            samples.append(len(texts) / (time.perf_counter() - t0))
        key = "fused" if fused else "plain"
        report[f"embeddings_per_second_{key}"] = statistics.median(samples)
        report[f"embeddings_samples_{key}"] = samples
        if fused:
            report["embeddings_fusion"] = embedder.fusion
        if best is None or statistics.median(samples) > best:
            best = statistics.median(samples)
        report["embeddings_peer_version"] = f"onnxruntime {embedder.version}"
    report["embeddings_per_second"] = best
    return report


def check(model_dir: Path, fixture: Path, threads: int, int8: bool = False) -> float:
    """Smallest cosine between this graph's embeddings and the sentence-transformers fixture."""
    cases = json.loads(fixture.read_text())["cases"]
    embedder = OrtEmbedder(model_dir, threads, int8=int8)
    got = embedder.embed([c["text"] for c in cases])
    worst = 1.0
    for case, vec in zip(cases, got):
        ref = np.array(case["embedding"], dtype=np.float64)
        cos = float(np.dot(vec, ref) / (np.linalg.norm(vec) * np.linalg.norm(ref)))
        worst = min(worst, cos)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="sentence-transformers model directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", type=Path, help="sentence-transformers embeddings fixture to compare with")
    parser.add_argument("--texts", type=Path, help="JSON list of texts to time (batch = all of them)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--int8", action="store_true", help="also time ORT's dynamically quantised int8 graph")
    args = parser.parse_args()
    if args.int8:
        texts = json.loads(args.texts.read_text()) if args.texts else ["a short sentence to embed"] * 32
        embedder = OrtEmbedder(args.model, args.threads, int8=True)
        embedder.embed(texts)
        samples = []
        for _ in range(max(args.repeats, 3)):
            t0 = time.perf_counter()
            embedder.embed(texts)
            samples.append(len(texts) / (time.perf_counter() - t0))
        line = f"int8 (quantize_dynamic): {statistics.median(samples):.1f} sentences/s"
        if args.check:
            line += f", minimum cosine with the fixture {check(args.model, args.check, args.threads, int8=True):.4f}"
        print(line)
    if args.check:
        worst = check(args.model, args.check, args.threads)
        print(f"minimum cosine with the fixture: {worst:.7f}")
        if worst < 0.999:
            print("error: the ONNX graph disagrees with sentence-transformers", file=sys.stderr)
            return 1
    if args.texts:
        print(json.dumps(benchmark(args.model, json.loads(args.texts.read_text()), args.threads, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
