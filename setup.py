"""Build hook for the native core: every ``stronghold/native/NAME.c`` becomes the extension
module ``stronghold._NAME`` (metadata and dependencies are in setup.cfg)."""

from pathlib import Path

from setuptools import Extension, setup

NATIVE = sorted(Path(__file__).parent.joinpath("stronghold", "native").glob("*.c"))

setup(ext_modules=[
    Extension(f"stronghold._{source.stem}", [str(source.relative_to(Path(__file__).parent))],
              extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-fno-strict-aliasing"])
    for source in NATIVE
])
