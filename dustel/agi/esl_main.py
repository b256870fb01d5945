"""Entry point of the outbound Event Socket process: gevent patches first."""
from gevent import monkey

monkey.patch_all()

from dustel.agi.esl_outbound import main  # noqa: E402

if __name__ == "__main__":
    main()
