"""Agent families: prompts that turn screenshots and a task into chat messages, and parsers that turn
the model's text back into a typed `Action`."""

from guikv.agents.action import Action, ActionType
from guikv.agents.family import FAMILIES, FAMILY_NAMES, AgentFamily, detect_family, get_family
from guikv.agents.prompting import HistoryEntry, ImageLike, Message, Monologue, collect_images
from guikv.agents.resize import IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS, model_image_size

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "IMAGE_FACTOR",
    "MAX_PIXELS",
    "MIN_PIXELS",
    "Action",
    "ActionType",
    "AgentFamily",
    "HistoryEntry",
    "ImageLike",
    "Message",
    "Monologue",
    "collect_images",
    "detect_family",
    "get_family",
    "model_image_size",
]
