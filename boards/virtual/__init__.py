"""The virtual board: MicroPython firmware on the unix port, wired like a Wokwi diagram.json
(see README.md)."""
from .board import VirtualBoard
from .diagram import Circuit, Diagram, DiagramError
from .errors import BoardError
from .flash import default_flash_files
from .process import find_micropython

__all__ = ["BoardError", "Circuit", "Diagram", "DiagramError", "VirtualBoard",
           "default_flash_files", "find_micropython"]
