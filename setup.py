from setuptools import find_packages, setup

setup(
    name="tic_tf",
    version="0.1.0",
    description="Spiking neural networks in Keras 3 / TensorFlow and their temporal "
                "information dynamics (Fisher information over timesteps).",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tic_tf", "tic_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.5",
        "tensorboard>=2.16",
        "absl-py>=1.4",
        "numpy>=1.26",
        "matplotlib>=3.7",  # the PNG plots of the analysis command
        "scikit-learn>=1.2",  # its bundled digits are the data set that needs no download
        # svhn, cifar10, cifar100 and fashion_mnist without --data_file (4.9.10 tested with
        # TensorFlow 2.21); imported only when one of them is loaded.
        "tensorflow-datasets>=4.9",
        # export to and import from NIR, the format of neuromorphic hardware (numpy, h5py).
        "nir>=1.0",
    ],
    extras_require={
        # Pick one TensorFlow build: tensorflow-cpu is smaller and has no CUDA libraries.
        "cpu": ["tensorflow-cpu>=2.16"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        # pytest-xdist: the README runs the suite on two processes, one test file each (a
        # file's tests share fixtures in order); most of a test is one-threaded graph tracing.
        # ai-edge-litert: the LiteRT interpreter that runs the TFLite exports in the tests.
        "test": ["pytest>=7", "pytest-xdist>=3", "ai-edge-litert>=1.0"],
    },
    entry_points={
        "console_scripts": [
            "tic-train=tic_tf.train:run",
            "tic-analyze=tic_tf.analyze:run",
            "tic-evaluate=tic_tf.evaluate:run",
            "tic-export=tic_tf.export:run",
            "tic-prune=tic_tf.prune:run",
            "tic-benchmark=tic_tf.benchmark:run",
        ],
    },
)
