"""simhete.replay"""
