"""simhete.hw"""
