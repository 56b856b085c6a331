"""eeasr.train"""
