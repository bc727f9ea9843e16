# The echo API (Goat's first workload): the static `goat-echo` binary alone,
# nothing of the orchestrator. Built by deploy/build-images.sh from a context
# holding only that binary.
FROM scratch
COPY goat-echo /goat-echo
EXPOSE 7777
ENTRYPOINT ["/goat-echo"]
