"""simhete.workload"""
