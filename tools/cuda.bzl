"""cuda_library: compiles .cu files with nvcc (Bazel 4 has no CUDA rules offline).

Each .cu becomes one position-independent object through a genrule; a cc_library wraps
the objects and links cudart (and cuBLAS where asked). Launcher headers (`*_cuda.h`) hold
POD signatures only, so host code includes them without nvcc.
"""

NVCC = "/usr/local/cuda/bin/nvcc"

# H100 / H200 (sm_90) plus PTX for newer devices.
CUDA_ARCH_FLAGS = "-gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90"

def requires_cuda():
    """target_compatible_with value: skip the target unless built with --config=cuda."""
    return select({
        "//tools:cuda_enabled": [],
        "//conditions:default": ["@platforms//:incompatible"],
    })

def cuda_library(name, srcs, hdrs = [], deps = [], cuda_deps = [], extra_headers = [], visibility = None, **kwargs):
    """Builds `srcs` (.cu) with nvcc into a cc_library named `name`.

    Args:
      name: target name.
      srcs: .cu files.
      hdrs: headers (launcher declarations) exported to C++ users.
      deps: cc_library deps whose headers the .cu files include (headers only).
      cuda_deps: extra CUDA libraries, e.g. ["//third_party:cublas"].
      extra_headers: header files from other packages that the .cu files include.
      visibility: visibility of the wrapping cc_library.
      **kwargs: forwarded to cc_library.
    """
    objs = []
    for src in srcs:
        stem = src.replace(".cu", "")
        obj = "_%s_%s.o" % (name, stem.replace("/", "_"))
        native.genrule(
            name = "_%s_%s_nvcc" % (name, stem.replace("/", "_")),
            srcs = [src] + extra_headers + [h for h in native.glob(["*.h"]) if h not in hdrs] + hdrs,
            outs = [obj],
            cmd = ("%s -std=c++17 -O3 -c -Xcompiler -fPIC %s -I. -I$(GENDIR) " % (NVCC, CUDA_ARCH_FLAGS)) +
                  "-o $@ $(location %s)" % src,
            tags = ["no-remote"],
            target_compatible_with = requires_cuda(),
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["//third_party:cudart"] + cuda_deps,
        visibility = visibility,
        target_compatible_with = requires_cuda(),
        **kwargs
    )
