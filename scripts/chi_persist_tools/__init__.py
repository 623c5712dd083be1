"""Commands students and instructors run on their own machine.

Each executable in scripts/ is a thin launcher for a module of this package, so
the logic can be imported and tested.
"""
