"""simhete.search"""
