"""A recording fake of the tensorrt module, for checking what vidrt's builder asks
TensorRT to do on machines without TensorRT. It builds nothing: every call is
appended to CALLS (and to $FAKE_TRT_LOG as JSON lines, for child processes).
$FAKE_TRT_MODE=fail makes the build return None after logging an error;
$FAKE_TRT_MODE=crash kills the process inside the build, as a driver fault would.
"""

import json
import os

__version__ = "10.99.0-fake"
CALLS = []


def _record(*call):
    CALLS.append(call)
    path = os.environ.get("FAKE_TRT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(call, default=str) + "\n")


class ILogger:
    class Severity:
        ERROR = "Severity.ERROR"
        WARNING = "Severity.WARNING"
        INFO = "Severity.INFO"

    def __init__(self):
        pass


class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 1


class MemoryPoolType:
    WORKSPACE = "WORKSPACE"


class BuilderFlag:
    FP16 = "FP16"
    BF16 = "BF16"
    INT8 = "INT8"
    FP8 = "FP8"


class _Profile:
    def set_shape(self, name, lo, opt, hi):
        _record("profile.set_shape", name, list(lo), list(opt), list(hi))


class _TimingCache:
    def __init__(self, data):
        self.data = data

    def serialize(self):
        return self.data + b"+tuned"


class _Config:
    def __setattr__(self, name, value):
        _record("config." + name, value)
        object.__setattr__(self, name, value)

    def set_memory_pool_limit(self, pool, size):
        _record("config.set_memory_pool_limit", pool, size)

    def set_flag(self, flag):
        _record("config.set_flag", flag)

    def add_optimization_profile(self, profile):
        _record("config.add_optimization_profile")

    def create_timing_cache(self, data):
        _record("config.create_timing_cache", len(data))
        object.__setattr__(self, "_cache", _TimingCache(bytes(data)))
        return self._cache

    def set_timing_cache(self, cache, ignore_mismatch):
        _record("config.set_timing_cache", ignore_mismatch)

    def get_timing_cache(self):
        return self._cache


class Builder:
    def __init__(self, logger):
        self.logger = logger
        _record("Builder")

    def create_network(self, flags):
        _record("builder.create_network", flags)
        return object()

    def create_builder_config(self):
        return _Config()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        _record("builder.build_serialized_network")
        mode = os.environ.get("FAKE_TRT_MODE")
        if mode == "crash":
            os._exit(3)
        if mode == "fail":
            self.logger.log(ILogger.Severity.ERROR, "out of memory while tuning tactic for /unet/conv_in")
            return None
        self.logger.log(ILogger.Severity.INFO, "fake build done")
        return b"FAKEPLAN"


class OnnxParser:
    def __init__(self, network, logger):
        self.num_errors = 0

    def parse_from_file(self, path):
        _record("parser.parse_from_file", os.path.basename(path))
        return True
