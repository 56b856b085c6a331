"""eeasr.convert"""
