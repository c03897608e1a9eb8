"""tinymnist: design and train very small convolutional networks on MNIST, step by step, under hard budgets."""

__version__ = "0.1.0"
