"""baim: edge–cloud collaborative generative AI.

Edge nodes train small heterogeneous VAEs ("learners") on private data; the cloud fuses them
into a bottom-up big AI model (BAIM) and cuts it into compact per-task models.
"""

__version__ = "0.1.0"
