"""scalesim: measure and model how a web application scales as its architecture grows.

A *stage* is a topology (which nodes run, how many, with what CPU budget) plus the app behaviours
that go with it. scalesim brings a stage up on real local servers, drives it with Locust, measures
every node, and fits a queueing model of the same topology to answer what-if questions that one
machine cannot measure.
"""

__version__ = "0.1.0"
