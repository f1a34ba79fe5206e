# threadguard/_ffi.py is generated when the package is built (tools/build-ffi):
# cffi's FFI object for the declarations in threadguard/_cdef.py.
from typing import Any

ffi: Any
