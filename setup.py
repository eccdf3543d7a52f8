"""Builds ATP's optional C twin (codec._native); a failed build leaves a working pure-Python install."""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Compile native/ if a C toolchain is present; never fail the install because of it."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure means "pure Python only"
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        sys.stderr.write(
            f"WARNING: optional native codec not built ({exc}); the pure-Python codec will be used.\n"
        )


ext_modules = []
if os.environ.get("ATP_BUILD_NATIVE", "1") != "0":
    ext_modules.append(
        Extension(
            "codec._native",
            sources=["native/atp_native.c"],
            extra_compile_args=["-O3", "-std=c99", "-Wall"],
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
