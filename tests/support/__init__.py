"""Helpers shared by test modules. A test module imports these, never another test module or a conftest."""
