"""Gradient attribution methods: the input gradient and its backward rules, Integrated Gradients,
noise tunnels, Expected Gradients and the CAM family (registry entries in ``methods``, ``cam``)."""
