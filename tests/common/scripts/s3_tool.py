"""A second S3 client for the remote tests (boto3, as moto ships it): what the bucket holds, judged independently of caretaker's own client.

Usage: s3_tool.py ENDPOINT COMMAND ARGS...
  mkbucket BUCKET              create BUCKET
  iam-user                     create a user allowed s3:*, print "KEY_ID SECRET" (for a server
                               started with INITIAL_NO_AUTH_ACTION_COUNT)
  list BUCKET PREFIX [SEEN...]  JSON list of {key, size, sha256} under PREFIX (each object read whole,
                               but those named SEEN, whose sha256 is null)
  put BUCKET KEY FILE          upload FILE to KEY
  put-many BUCKET KEY...       put a small object at each KEY
  delete-all BUCKET PREFIX     delete every object under PREFIX
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (any value for a server without auth).
"""

import hashlib
import json
import os
import sys

import boto3


def client(endpoint, service="s3"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )


def main():
    endpoint, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    s3 = client(endpoint)
    if command == "mkbucket":
        s3.create_bucket(Bucket=args[0])
    elif command == "iam-user":
        iam = client(endpoint, "iam")
        iam.create_user(UserName="caretaker")
        iam.put_user_policy(
            UserName="caretaker",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="caretaker")["AccessKey"]
        print(key["AccessKeyId"], key["SecretAccessKey"])
    elif command == "list":
        bucket, prefix, seen = args[0], args[1], set(args[2:])
        out = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"] in seen:
                    out.append({"key": obj["Key"], "size": obj["Size"], "sha256": None})
                    continue
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
                digest = hashlib.sha256()
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    digest.update(chunk)
                out.append({"key": obj["Key"], "size": obj["Size"], "sha256": digest.hexdigest()})
        print(json.dumps(out))
    elif command == "put":
        bucket, key, path = args
        s3.upload_file(path, bucket, key)
    elif command == "put-many":
        bucket, keys = args[0], args[1:]
        for key in keys:
            s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    elif command == "delete-all":
        bucket, prefix = args
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
