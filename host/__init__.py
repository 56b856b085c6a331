"""eeasr.host"""
