//! Record formats (KAFKA, JSON, DELIMITED) decoded straight into Arrow record batches and encoded back.
