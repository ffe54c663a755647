# vsmd and vsmctl in one image: `docker compose up` runs it next to RabbitMQ (compose.yaml).
FROM python:3.11-slim AS build
WORKDIR /src
# The sources only (.dockerignore keeps the venv, state and caches out); vsmd/data links into
# config/ and systemd/, so those come along.
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# Not root: VSMs run as this user too, and a state directory it owns.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/vsmd --create-home vsmd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/vsmd-*.whl \
    && rm -rf /wheels
# By number, so that a runtime check (Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
WORKDIR /var/lib/vsmd
ENV PYTHONUNBUFFERED=1 \
    VSM_STATE_DIR=/var/lib/vsmd \
    VSM_NAMESPACE=vsm \
    VSM_BROKER_URL=amqp://vsmd:vsmd@rabbitmq:5672/%2F
VOLUME ["/var/lib/vsmd"]
# The daemon answers on its admin queue: the same check an operator makes.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["vsmctl", "ping", "--timeout", "5"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["vsmd"]
CMD ["run"]
