"""Ops around the recurrent cells, one module per op family (DESIGN.md, "Units of growth").

Each op is a float IR dataclass and its integer twin with the methods the stages call:
``outs`` (sizes, per-step-ness and scales of what it writes, for ``ir.tensors``),
``run_float`` / ``run_int`` (the simulators, over whole sequences), ``quantize`` (float ->
integer op) and ``template`` (its C kernel under templates/ops/). The stages dispatch on
those methods, so adding an op touches no central table.
"""
