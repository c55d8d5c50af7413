// MongoDB users and roles of the deployment (docker-compose.yml).
//
// The official mongo image runs this once, when the container starts on an empty data
// volume (/docker-entrypoint-initdb.d), as the root user MONGO_INITDB_ROOT_USERNAME, in
// the database MONGO_INITDB_DATABASE. It creates the API's own user, SLEEPLAB_DB_USER
// with password SLEEPLAB_DB_PASSWORD, whose role "sleeplabApi" may
//   - read and change the working collections (patients, rooms, records, images,
//     commands, uploads, meta, and users and sessions for signing in), and
//   - only read and insert into the audit trail ("audit"): no update, no delete, no drop,
// so the API, a bug in it or anyone holding its credentials cannot rewrite or remove an
// audit entry. Only the root user can; keep its password away from the API.
// tests/test_deploy.py checks these collections against storage.Storage.

const dbName = process.env.MONGO_INITDB_DATABASE || "sleeplab";
const apiUser = process.env.SLEEPLAB_DB_USER || "sleeplab_api";
const apiPassword = process.env.SLEEPLAB_DB_PASSWORD;
if (!apiPassword) {
  throw new Error("SLEEPLAB_DB_PASSWORD is not set: the API's database user needs one");
}

const WORKING_COLLECTIONS = ["patients", "rooms", "records", "images", "commands",
                             "uploads", "meta", "users", "sessions", "live_nights",
                             "live_chunks"];
const APPEND_ONLY_COLLECTIONS = ["audit"];
const WORKING_ACTIONS = ["find", "insert", "update", "remove", "createCollection",
                         "createIndex", "listIndexes"];
const APPEND_ONLY_ACTIONS = ["find", "insert", "createCollection", "createIndex",
                             "listIndexes"];

const app = db.getSiblingDB(dbName);
const privileges = (collections, actions) =>
  collections.map((collection) => ({ resource: { db: dbName, collection }, actions }));

app.createRole({
  role: "sleeplabApi",
  privileges: [
    ...privileges(WORKING_COLLECTIONS, WORKING_ACTIONS),
    ...privileges(APPEND_ONLY_COLLECTIONS, APPEND_ONLY_ACTIONS),
    // the names and options of the collections only: is live_chunks a time-series one?
    { resource: { db: dbName, collection: "" }, actions: ["listCollections"] },
  ],
  roles: [],
});
app.createUser({
  user: apiUser,
  pwd: apiPassword,
  roles: [{ role: "sleeplabApi", db: dbName }],
});
print(`created user ${apiUser} with role sleeplabApi on ${dbName} (audit: insert-only)`);
