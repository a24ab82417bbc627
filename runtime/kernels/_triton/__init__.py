"""Triton kernels. Importing any module here imports triton: only `backend.triton_module` does it,
when a Triton implementation is actually chosen."""
