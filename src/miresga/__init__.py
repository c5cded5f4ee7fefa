"""Miresga: a layer-7 load balancer split over a programmable switch, front-ends and back-end agents."""

__version__ = "0.1.0"
