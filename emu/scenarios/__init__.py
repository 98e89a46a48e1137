"""The built-in scenarios. Each suite is a module named in the ``emu.scenarios`` entry-point
group (pyproject.toml): ``emu hunt svm`` hunts every POWER secure-VM scenario in turn.
"""
