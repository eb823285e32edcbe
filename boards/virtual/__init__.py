"""The virtual board: MicroPython firmware on the unix port, wired like a Wokwi diagram.json
(see README.md)."""
from .board import BoardError, VirtualBoard, default_flash_files, find_micropython
from .diagram import Circuit, Diagram, DiagramError

__all__ = ["BoardError", "Circuit", "Diagram", "DiagramError", "VirtualBoard",
           "default_flash_files", "find_micropython"]
