"""LOUPE's loss terms, one module each, registered in the order of the loss sum (``base.TERMS``):
L_CMC, fine-grained contrast, SimCLR, PACL, L_TSA, L_FSA, L_UNSIL. A new term: a module here (or
anywhere) with a registered ``Term`` subclass (docs/ARCHITECTURE.md, "Loss")."""
from . import cmc, fine, simclr, pacl, tsa, fsa, unsil  # noqa: F401 - registration, in this order
from .base import TERMS, Term, register_term, unregister_term

__all__ = ["TERMS", "Term", "register_term", "unregister_term"]
