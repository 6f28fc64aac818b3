import { runNotificationsSuite } from "./notifications.suite";

// The embedded store and the in-process event bus.
runNotificationsSuite("embedded", null);
