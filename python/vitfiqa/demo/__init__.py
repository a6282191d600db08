"""The embedded demo: a small ViT recognizer trained on Fashion-MNIST (a stand-in for a face model: each
clothing class plays the role of an identity) and a controlled-degradation study of the quality methods."""
