"""tic_tf: spiking neural networks in Keras 3 / TensorFlow, and their temporal information."""
import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) buries the tools' own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
