"""A recording fake of the tensorrt module, for checking what vidrt asks TensorRT to do
on machines without TensorRT. It builds and runs nothing: calls are appended to CALLS
(and to $FAKE_TRT_LOG as JSON lines, for child processes).

It is strict: every class and the module refuse any name that TensorRT 10's Python API
does not have (the allowed names, and their source, are data in ../trt10_api.json), so
a test passes only for code the real API could run.

$FAKE_TRT_MODE=fail makes the build return None after logging an error;
$FAKE_TRT_MODE=crash kills the process inside the build, as a driver fault would;
$FAKE_TRT_MODE=hang makes the build sleep (for timeouts and Ctrl-C).

The runtime side deserializes a "plan" that is JSON: {"tensors": {name: {"mode":
"INPUT"|"OUTPUT", "dtype": "FLOAT", "shape_of": input name, "set": {axis: value}}},
"device_memory": bytes, "profiles": [{input name: [min, max]}]}; its execution context
checks shapes against the active profile and answers as TensorRT does (False on a
refused call).
"""

import json
import os
import time
from pathlib import Path

API = json.loads((Path(__file__).parent.parent / "trt10_api.json").read_text())
__version__ = "10.99.0-fake"
CALLS = []


def _record(*call):
    CALLS.append(call)
    path = os.environ.get("FAKE_TRT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(call, default=str) + "\n")


def _short(member) -> str:
    return str(member).rsplit(".", 1)[-1]


def __getattr__(name):
    raise AttributeError(f"module 'tensorrt' has no attribute '{name}' (not in TensorRT 10's Python API)")


class _Strict:
    """Refuses public attributes outside API[_api]."""

    _api = ""

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in API[type(self)._api]:
            raise AttributeError(f"tensorrt.{type(self)._api} has no attribute '{name}' (not in TensorRT 10's Python API)")
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        if not name.startswith("_") and name not in API[type(self)._api]:
            raise AttributeError(f"tensorrt.{type(self)._api} has no attribute '{name}' (not in TensorRT 10's Python API)")
        object.__setattr__(self, name, value)


class _EnumMember(int):
    def __new__(cls, owner, name, value):
        m = int.__new__(cls, value)
        m._name = f"{owner}.{name}"
        return m

    def __str__(self):
        return self._name

    __repr__ = __str__


class _EnumMeta(type):
    def __getattr__(cls, name):
        raise AttributeError(f"tensorrt.{cls.__name__} has no member '{name}' (not in TensorRT 10's Python API)")


def _enum(name, api_key=None):
    members = {m: _EnumMember(name, m, i) for i, m in enumerate(API[api_key or name])}
    return _EnumMeta(name, (), members)


NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag")
MemoryPoolType = _enum("MemoryPoolType")
BuilderFlag = _enum("BuilderFlag")
ExecutionContextAllocationStrategy = _enum("ExecutionContextAllocationStrategy")
DataType = _enum("DataType")
TensorIOMode = _enum("TensorIOMode")


class ILogger:
    Severity = _enum("Severity", "ILogger.Severity")

    def __init__(self):
        pass


class Logger(ILogger):
    def __init__(self, min_severity=None):
        self.min_severity = min_severity


# -- builder -------------------------------------------------------------------------------


class _Profile(_Strict):
    _api = "IOptimizationProfile"

    def set_shape(self, name, lo, opt, hi):
        _record("profile.set_shape", name, list(lo), list(opt), list(hi))


class _TimingCache(_Strict):
    _api = "ITimingCache"

    def __init__(self, data):
        self._data = data

    def serialize(self):
        return self._data + b"+tuned"


class _Config(_Strict):
    _api = "IBuilderConfig"

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if not name.startswith("_"):
            _record("config." + name, value)

    def set_memory_pool_limit(self, pool, size):
        _record("config.set_memory_pool_limit", _short(pool), size)

    def set_flag(self, flag):
        _record("config.set_flag", _short(flag))

    def clear_flag(self, flag):
        _record("config.clear_flag", _short(flag))

    def get_flag(self, flag):
        return False

    def add_optimization_profile(self, profile):
        _record("config.add_optimization_profile")
        return 0

    def create_timing_cache(self, data):
        _record("config.create_timing_cache", len(data))
        self._cache = _TimingCache(bytes(data))
        return self._cache

    def set_timing_cache(self, cache, ignore_mismatch):
        _record("config.set_timing_cache", ignore_mismatch)
        return os.environ.get("FAKE_TRT_MODE") != "bad-cache"

    def get_timing_cache(self):
        return self._cache


class Builder(_Strict):
    _api = "Builder"

    def __init__(self, logger):
        self._logger = logger
        _record("Builder")

    def create_network(self, flags):
        _record("builder.create_network", flags)
        return _Network()

    def create_builder_config(self):
        return _Config()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        _record("builder.build_serialized_network")
        mode = os.environ.get("FAKE_TRT_MODE")
        if mode == "crash":
            os._exit(3)
        if mode == "hang":
            time.sleep(300)  # long enough for any test; never forever
        if mode == "fail":
            self._logger.log(ILogger.Severity.ERROR, "out of memory while tuning tactic for /unet/conv_in")
            return None
        self._logger.log(ILogger.Severity.VERBOSE, "tactic 0x1234 timed at 0.1 ms")
        self._logger.log(ILogger.Severity.INFO, "fake build done")
        return b"FAKEPLAN"


class _Tensor(_Strict):
    _api = "ITensor"

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype


class _Layer(_Strict):
    """One layer per ONNX node, named as TensorRT's ONNX parser names layers (the node's
    name), its outputs typed as ONNX shape inference types them."""

    _api = "ILayer"

    def __init__(self, name, outputs):
        self.name = name
        self.num_outputs = len(outputs)
        self._outputs = outputs
        self._precision = None

    def get_output(self, index):
        return self._outputs[index]

    @property
    def precision(self):
        return self._precision if self._precision is not None else DataType.FLOAT

    @precision.setter
    def precision(self, value):
        _record("layer.precision", self.name, _short(value))
        self._precision = value

    def set_output_type(self, index, dtype):
        if not 0 <= index < self.num_outputs:
            raise IndexError(f"layer {self.name} has {self.num_outputs} outputs")
        if self._outputs[index].dtype not in (DataType.FLOAT, DataType.HALF, DataType.BF16):
            raise TypeError(f"layer {self.name}: output {index} is {_short(self._outputs[index].dtype)}, not a float tensor")
        _record("layer.set_output_type", self.name, index, _short(dtype))


class _Network(_Strict):
    _api = "INetworkDefinition"

    def __init__(self):
        self._layers = []

    @property
    def num_layers(self):
        return len(self._layers)

    def get_layer(self, index):
        return self._layers[index]


class OnnxParser(_Strict):
    _api = "OnnxParser"

    def __init__(self, network, logger):
        self.num_errors = 0
        self._network = network

    def parse_from_file(self, path):
        _record("parser.parse_from_file", os.path.basename(path))
        if os.path.isfile(path) and os.path.getsize(path) > 0:  # tests may name no real graph
            import onnx

            model = onnx.shape_inference.infer_shapes(onnx.load(path, load_external_data=False))
            graph = model.graph
            types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
            names = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT64: "INT64",
                     onnx.TensorProto.INT32: "INT32", onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.BFLOAT16: "BF16"}
            self._network._layers = [
                _Layer(n.name, [_Tensor(o, getattr(DataType, names.get(types.get(o), "FLOAT"))) for o in n.output])
                for n in graph.node
            ]
        return True

    def get_error(self, i):
        return ""


# -- runtime -------------------------------------------------------------------------------


class Runtime(_Strict):
    _api = "Runtime"

    def __init__(self, logger):
        self.engine_host_code_allowed = True

    def deserialize_cuda_engine(self, data):
        try:
            return _Engine(json.loads(bytes(data)))
        except ValueError:
            return None


class _Engine(_Strict):
    _api = "ICudaEngine"

    def __init__(self, plan):
        self._plan = plan
        self.device_memory_size = plan["device_memory"]
        self.device_memory_size_v2 = plan["device_memory"]
        self.num_io_tensors = len(plan["tensors"])
        self.num_optimization_profiles = len(plan["profiles"])

    def get_tensor_name(self, i):
        return list(self._plan["tensors"])[i]

    def get_tensor_mode(self, name):
        return getattr(TensorIOMode, self._plan["tensors"][name]["mode"])

    def get_tensor_dtype(self, name):
        return getattr(DataType, self._plan["tensors"][name].get("dtype", "FLOAT"))

    def get_tensor_shape(self, name):
        return (-1,)

    def create_execution_context(self, strategy=None):
        _record("engine.create_execution_context", str(strategy))
        return _Context(self._plan)


class _Context(_Strict):
    _api = "IExecutionContext"

    def __init__(self, plan):
        self._plan = plan
        self._profile = 0
        self._shapes = {}
        self._addresses = {}
        self._memory = None

    def set_optimization_profile_async(self, index, stream):
        _record("context.set_optimization_profile_async", index)
        if not 0 <= index < len(self._plan["profiles"]):
            return False
        self._profile = index
        self._shapes = {}
        return True

    def set_device_memory(self, ptr, size):
        _record("context.set_device_memory", size)
        if size < self._plan["device_memory"]:
            raise RuntimeError("device memory smaller than the engine needs")
        self._memory = ptr

    def set_input_shape(self, name, shape):
        lo, hi = self._plan["profiles"][self._profile][name]
        ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        if ok:
            self._shapes[name] = tuple(shape)
        return ok

    def set_tensor_address(self, name, ptr):
        if name not in self._plan["tensors"] or not ptr:
            return False
        self._addresses[name] = ptr
        return True

    def get_tensor_shape(self, name):
        t = self._plan["tensors"][name]
        shape = list(self._shapes[t["shape_of"]])
        for axis, value in t.get("set", {}).items():
            shape[int(axis)] = value
        return tuple(shape)

    def execute_async_v3(self, stream):
        _record("context.execute_async_v3", stream)
        inputs = [n for n, t in self._plan["tensors"].items() if t["mode"] == "INPUT"]
        return (self._memory is not None and all(n in self._shapes for n in inputs)
                and set(self._addresses) == set(self._plan["tensors"]))
