"""Load for the example app: mostly fast calls, some slow, a few broken on
purpose, the robot page now and then - the mix the Grafana dashboard and the
traces are meant to make sense of.

    locust -f deploy/loadtest/locustfile.py --host http://127.0.0.1:3000
    locust -f deploy/loadtest/locustfile.py --host http://127.0.0.1:3000 \
        --headless -u 50 -r 10 -t 1m

`/hello` calls out to its upstream; add it with GANTRY_LOAD_HELLO=1 when the
upstream is reachable from Gantry.
"""
import os

from locust import FastHttpUser, between, task


class ExampleApp(FastHttpUser):
    wait_time = between(0.01, 0.1)

    @task(10)
    def alpha(self):
        self.client.get("/alpha")

    @task(3)
    def beta(self):
        self.client.get("/beta?delay_ms=50", name="/beta?delay_ms=50")

    @task(1)
    def broken(self):
        # Fails on purpose: a 500 is the right answer here.
        with self.client.get("/broken", catch_response=True) as r:
            if r.status_code == 500:
                r.success()
            else:
                r.failure(f"/broken answered {r.status_code}, not 500")

    @task(1)
    def robot_page(self):
        self.client.get("/robot/")

    @task(2)
    def hello(self):
        if os.environ.get("GANTRY_LOAD_HELLO") == "1":
            self.client.get("/hello")
