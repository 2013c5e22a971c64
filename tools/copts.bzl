"""Compiler options shared by every ftx target. Warnings only, never -march:
Highway picks the instruction set at run time (dynamic dispatch)."""

FTX_COPTS = [
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-sign-compare",
    "-Wno-missing-field-initializers",
    "-Wswitch",
    "-Werror=return-type",
]

FTX_TEST_COPTS = FTX_COPTS + [
    "-Wno-unused-function",
]

# Defined for targets that are built with --config=cuda.
FTX_CUDA_DEFINES = select({
    "//tools:cuda_enabled": ["FTX_HAVE_CUDA=1"],
    "//conditions:default": [],
})
