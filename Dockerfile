# One image for every Parley node role; the role is chosen at run time by SERVICES
# (api, users, conversations, messages, notifications, files), see docker-compose.yml.
FROM node:22-bookworm-slim

ENV NODE_ENV=production \
    PORT=3000 \
    DATA_DIR=/app/data \
    NPM_CONFIG_UPDATE_NOTIFIER=false

WORKDIR /app

# Dependencies first, so that this layer is reused while only the sources change.
# tsx and typescript are runtime dependencies: the TypeScript sources run as they are.
# No dependency needs its install script.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
    && npm cache clean --force

# Sources stay owned by root (read-only for the app); only DATA_DIR is writable by it.
COPY . .
RUN mkdir -p /app/data && chown node:node /app/data

USER node

EXPOSE 3000

# The command of `npm start` (keep the two alike; the V8 flags are lib/node-flags.ts), run by node itself rather than through npm,
# so that SIGTERM reaches the runner directly and the node drains and stops cleanly.
CMD ["node", "--max-semi-space-size=32", "--import", "tsx", "bin/runner.ts", "--config", "moleculer.config.ts"]
