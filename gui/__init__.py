"""edgekit's desktop app (PySide6): open a model, choose a device, run it, benchmark, convert.

Widgets only: state lives in :mod:`gui.state`, background work in :mod:`gui.jobs`, and every
computation goes through edgekit and converters (:mod:`gui.work`).
"""
