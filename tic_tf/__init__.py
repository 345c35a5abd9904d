"""tic_tf: spiking neural networks in Keras 3 / TensorFlow, and their temporal information."""
__version__ = "0.1.0"
