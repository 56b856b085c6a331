"""eeasr.train.data"""
