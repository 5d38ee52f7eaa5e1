/* dbutil.h - a helper of the C tests that look into the daemon's SQLite file directly. */
#ifndef PF_DBUTIL_H
#define PF_DBUTIL_H
#include <sqlite3.h>

/* Runs one SQL statement on a separate connection; returns the first column of the first row. */
static inline long long q(const char *path, const char *sql) {
    sqlite3 *db;
    sqlite3_stmt *st;
    long long v = -1;
    sqlite3_open(path, &db);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return v;
}
#endif
