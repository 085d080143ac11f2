# syntax=docker/dockerfile:1
# The Stage-4 image: a static stage4 binary on distroless, run as a non-root
# user. Build it from the repository root:
#
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t stage4 .
#
# Without Docker, make image builds the same image from the checkout alone
# (cmd/stage4image: no base image pulled). Its test holds that image to
# what this file promises (ENTRYPOINT, CMD, USER, ENV, EXPOSE, LABEL, the
# go build flags); cmd/stage4/deploy_test.go checks the flags and STAGE4_
# variables named here against the binary.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first: a change of source alone does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# .git stays out of the build context (.dockerignore), so Go cannot stamp
# the revision itself; stage4 version prints this one instead.
ARG REVISION=""
# CGO_ENABLED=0 makes a static binary for an image without libc; -trimpath
# keeps the build machine's paths out of it.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.revision=${REVISION}" -o /out/stage4 ./cmd/stage4

# distroless/static: CA certificates, tzdata and /etc/passwd, no shell or
# package manager. Its nonroot user is 65532, given as a number so that
# Kubernetes' runAsNonRoot can check it.
FROM gcr.io/distroless/static-debian12:nonroot
# A build argument is per stage: declared again for the label.
ARG REVISION=""
LABEL org.opencontainers.image.source=https://github.com/stage4/stage4 \
      org.opencontainers.image.revision=${REVISION}
COPY --from=build /out/stage4 /stage4
USER 65532:65532
# serve's defaults listen on loopback, which nothing outside a container can
# reach; these environment fallbacks of --listen and --metrics-listen open
# both ports on every interface. Flags on the command line still win.
ENV STAGE4_LISTEN=:8080 \
    STAGE4_METRICS_LISTEN=:9090
EXPOSE 8080 9090
ENTRYPOINT ["/stage4"]
CMD ["serve"]
