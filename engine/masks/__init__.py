"""Mask explanations: representations (pixels, wavelets, shearlets), the shared optimisation loop,
initialisations, the image mask methods and ExtremalMask for time series."""
