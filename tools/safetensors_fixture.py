#!/usr/bin/env python3
"""Safetensors interop between ftx and the official `safetensors` package.

  write [OUT]  writes models/testdata/python_fixture.safetensors (or OUT) with the
               official writer; //models:safetensors_test reads it and checks the
               values, and that ftx's float16/bfloat16 rounding gives the same
               bits as numpy / ml_dtypes.
  check FILE   reads a file written by ftx with the official reader (which
               validates the header and offsets) and prints the metadata and
               every tensor, e.g. the F32, F16 and BF16 files that
               safetensors_test leaves in its undeclared outputs:
                 bazel test //models:safetensors_test
                 unzip -o bazel-testlogs/models/safetensors_test/test.outputs/outputs.zip -d /tmp/st
                 python3 tools/safetensors_fixture.py check /tmp/st/ftx_written_bf16.safetensors

Needs: pip install safetensors numpy ml_dtypes (tested with safetensors 0.8.0,
numpy 2.4, ml_dtypes 0.6). The values are mirrored in safetensors_test.cc.
"""

import sys

import ml_dtypes
import numpy as np
from safetensors import deserialize, safe_open
from safetensors.numpy import save_file

DEFAULT_OUT = "models/testdata/python_fixture.safetensors"

NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def fixture_tensors():
    # f32[i] = float32(0.1 * i - 0.73) in double, then rounded: the C++ test
    # recomputes it the same way. Scaled so that f16 and bf16 must round.
    index = np.arange(15, dtype=np.float64)
    f32 = ((0.1 * index - 0.73) * 3.3).astype(np.float32).reshape(3, 5)
    return {
        "f32": f32,
        "f16": f32.astype(np.float16),
        "bf16": f32.astype(ml_dtypes.bfloat16),
        "f64": (0.1 * np.arange(8, dtype=np.float64) - 0.73).reshape(2, 2, 2),
        "i64": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
        "mask": np.array([True, False, False, True]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "layers.0.attn.weight": np.array([[1.0, -2.0], [0.5, 4.0]],
                                         dtype=np.float32),
    }


def write(out):
    save_file(fixture_tensors(), out,
              metadata={"format": "np", "producer": "safetensors_fixture.py"})
    print(f"wrote {out}")


def check(path):
    with safe_open(path, framework="np") as f:
        print(f"metadata: {f.metadata()}")
    with open(path, "rb") as f:
        tensors = deserialize(f.read())
    for name, info in sorted(tensors):
        dtype = NUMPY_DTYPES[info["dtype"]]
        values = np.frombuffer(bytes(info["data"]), dtype=dtype).reshape(
            info["shape"])
        print(f"{name} {info['dtype']} {list(info['shape'])} "
              f"{values.astype(np.float64).ravel()[:6].tolist()}")
    print(f"{path}: {len(tensors)} tensors read by safetensors")


def main(argv):
    if len(argv) >= 2 and argv[1] == "write":
        write(argv[2] if len(argv) > 2 else DEFAULT_OUT)
    elif len(argv) == 3 and argv[1] == "check":
        check(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
