"""clipft_utils: the shared library of the clipft course (adapting CLIP to Oxford Flowers102)."""
from .config import METHODS, make_config, get_profile
from .course import Course, setup, train_method
from .errors import ClipftError, ConfigError, DatasetError, OfflineError, ResultsError
from .seeding import seed_everything

__all__ = ["METHODS", "make_config", "get_profile", "Course", "setup", "train_method", "ClipftError",
           "ConfigError", "DatasetError", "OfflineError", "ResultsError", "seed_everything"]
__version__ = "0.1.0"
